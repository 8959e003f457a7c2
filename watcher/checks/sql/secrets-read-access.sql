-- id: secrets-read-access
-- title: Roles that can read Secrets
-- severity: medium
-- frameworks: nsa-cisa
-- section: NSA/CISA v1.2 "Authentication and authorization: Role-based access control"
-- remediation: Grant get/list/watch on secrets only to what must read them, by resourceNames where possible.
--
-- Returns one row per offending object: context_name, kind, namespace, name, uid.
\ir include/expansions.sql
WITH roles AS (  -- Roles and ClusterRoles, without the API server's own bootstrap roles
:roles
)
SELECT DISTINCT r.context_name, r.kind, r.namespace, r.name, r.uid
FROM roles r, jsonb_array_elements(COALESCE(r.rules, '[]')) AS rule
WHERE (rule->'apiGroups' ? '' OR rule->'apiGroups' ? '*')
  AND (rule->'resources' ? 'secrets' OR rule->'resources' ? '*')
  AND rule->'verbs' ?| array['get', 'list', 'watch', '*'];
