-- id: rbac-escalation-verbs
-- title: Roles that can escalate, bind or impersonate
-- severity: high
-- frameworks: nsa-cisa
-- section: NSA/CISA v1.2 "Authentication and authorization: Role-based access control"
-- remediation: Remove escalate, bind and impersonate: each lets the holder act with more rights than it was given.
--
-- Returns one row per offending object: context_name, kind, namespace, name, uid.
\ir include/expansions.sql
WITH roles AS (  -- Roles and ClusterRoles, without the API server's own bootstrap roles
:roles
)
SELECT DISTINCT r.context_name, r.kind, r.namespace, r.name, r.uid
FROM roles r, jsonb_array_elements(COALESCE(r.rules, '[]')) AS rule
WHERE (rule->'verbs' ?| array['escalate', 'bind', 'impersonate']
       OR (rule->'verbs' ? '*'
           AND rule->'resources' ?| array['roles', 'clusterroles', 'users', 'groups', 'serviceaccounts', 'uids', '*']));
