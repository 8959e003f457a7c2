-- id: role-wildcard
-- title: Roles granting wildcard verbs, resources or API groups
-- severity: medium
-- frameworks: nsa-cisa
-- section: NSA/CISA v1.2 "Authentication and authorization: Role-based access control"
-- remediation: List the verbs, resources and API groups the role needs instead of '*'.
--
-- Returns one row per offending object: context_name, kind, namespace, name, uid.
\ir include/expansions.sql
WITH roles AS (  -- Roles and ClusterRoles, without the API server's own bootstrap roles
:roles
)
SELECT DISTINCT r.context_name, r.kind, r.namespace, r.name, r.uid
FROM roles r, jsonb_array_elements(COALESCE(r.rules, '[]')) AS rule
WHERE (rule->'verbs' ? '*' OR rule->'resources' ? '*' OR rule->'apiGroups' ? '*')
  AND r.kind = 'Role';
