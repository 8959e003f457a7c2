-- id: namespace-without-default-deny-ingress
-- title: Namespaces without a default-deny ingress NetworkPolicy
-- severity: medium
-- frameworks: nsa-cisa
-- section: NSA/CISA v1.2 "Network separation and hardening: Network policies"
-- remediation: Add a NetworkPolicy with an empty podSelector, policyTypes [Ingress] and no ingress rules.
--
-- Returns one row per offending object: context_name, kind, namespace, name, uid.
SELECT n.context_name, 'Namespace' AS kind, n.namespace, n.name, n.uid
FROM k8s_namespaces n
WHERE NOT EXISTS (
  SELECT 1 FROM k8s_networkpolicies p
  WHERE p.context_name = n.context_name AND p.namespace = n.name
    AND COALESCE(p.pod_selector->'matchLabels', '{}') = '{}'
    AND COALESCE(p.pod_selector->'matchExpressions', '[]') = '[]'
    AND 'Ingress' = ANY (p.policy_types)
    AND COALESCE(p.spec->'ingress', '[]') = '[]');
