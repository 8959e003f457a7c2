-- id: namespace-without-limit-range
-- title: Namespaces without a LimitRange
-- severity: low
-- frameworks: nsa-cisa
-- section: NSA/CISA v1.2 "Network separation and hardening: Resource policies"
-- remediation: Add a LimitRange to the namespace.
--
-- Returns one row per offending object: context_name, kind, namespace, name, uid.
SELECT n.context_name, 'Namespace' AS kind, n.namespace, n.name, n.uid
FROM k8s_namespaces n
WHERE NOT EXISTS (
  SELECT 1 FROM k8s_limitranges r WHERE r.context_name = n.context_name AND r.namespace = n.name);
