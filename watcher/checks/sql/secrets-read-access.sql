-- id: secrets-read-access
-- title: Roles that can read Secrets
-- severity: medium
-- frameworks: nsa-cisa
-- section: NSA/CISA v1.2 "Authentication and authorization: Role-based access control"
-- remediation: Grant get/list/watch on secrets only to what must read them, by resourceNames where possible.
--
-- Returns one row per offending object: context_name, kind, namespace, name, uid.
WITH roles AS (  -- Roles and ClusterRoles, without the API server's own bootstrap roles
  SELECT context_name, 'ClusterRole' AS kind, namespace, name, uid, rules, labels FROM k8s_clusterroles
  UNION ALL
  SELECT context_name, 'Role', namespace, name, uid, rules, labels FROM k8s_roles
)
SELECT DISTINCT r.context_name, r.kind, r.namespace, r.name, r.uid
FROM roles r, jsonb_array_elements(COALESCE(r.rules, '[]')) AS rule
WHERE COALESCE(r.labels->>'kubernetes.io/bootstrapping', '') <> 'rbac-defaults'
  AND (rule->'apiGroups' ? '' OR rule->'apiGroups' ? '*')
  AND (rule->'resources' ? 'secrets' OR rule->'resources' ? '*')
  AND rule->'verbs' ?| array['get', 'list', 'watch', '*'];
