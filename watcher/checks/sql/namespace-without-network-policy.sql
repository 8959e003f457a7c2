-- id: namespace-without-network-policy
-- title: Namespaces without any NetworkPolicy
-- severity: medium
-- frameworks: nsa-cisa
-- section: NSA/CISA v1.2 "Network separation and hardening: Network policies"
-- remediation: Add NetworkPolicies (start with a default deny) so pods only reach what they must.
--
-- Returns one row per offending object: context_name, kind, namespace, name, uid.
SELECT n.context_name, 'Namespace' AS kind, n.namespace, n.name, n.uid
FROM k8s_namespaces n
WHERE NOT EXISTS (
  SELECT 1 FROM k8s_networkpolicies p WHERE p.context_name = n.context_name AND p.namespace = n.name);
