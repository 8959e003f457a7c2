-- id: cluster-admin-bindings
-- title: Bindings to the cluster-admin ClusterRole
-- severity: high
-- frameworks: nsa-cisa
-- section: NSA/CISA v1.2 "Authentication and authorization: Role-based access control"
-- remediation: Bind narrower roles; keep cluster-admin for break-glass accounts.
--
-- Returns one row per offending object: context_name, kind, namespace, name, uid.
\ir include/expansions.sql
WITH bindings AS (  -- RoleBindings and ClusterRoleBindings, without the API server's bootstrap ones
:bindings
)
SELECT DISTINCT b.context_name, b.kind, b.namespace, b.name, b.uid
FROM bindings b
WHERE b.role_ref->>'kind' = 'ClusterRole' AND b.role_ref->>'name' = 'cluster-admin';
