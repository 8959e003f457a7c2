-- id: pod-exec-access
-- title: Roles that can exec or attach into pods
-- severity: medium
-- frameworks: nsa-cisa
-- section: NSA/CISA v1.2 "Authentication and authorization: Role-based access control"
-- remediation: Grant create on pods/exec and pods/attach only to break-glass roles.
--
-- Returns one row per offending object: context_name, kind, namespace, name, uid.
\ir include/expansions.sql
WITH roles AS (  -- Roles and ClusterRoles, without the API server's own bootstrap roles
:roles
)
SELECT DISTINCT r.context_name, r.kind, r.namespace, r.name, r.uid
FROM roles r, jsonb_array_elements(COALESCE(r.rules, '[]')) AS rule
WHERE (rule->'apiGroups' ? '' OR rule->'apiGroups' ? '*')
  AND rule->'resources' ?| array['pods/exec', 'pods/attach', '*']
  AND rule->'verbs' ?| array['create', 'get', '*'];
