-- id: anonymous-bindings
-- title: Bindings granting rights to anonymous or unauthenticated users
-- severity: critical
-- frameworks: nsa-cisa
-- section: NSA/CISA v1.2 "Authentication and authorization: Authentication"
-- remediation: Remove system:anonymous and system:unauthenticated from the binding's subjects.
--
-- Returns one row per offending object: context_name, kind, namespace, name, uid.
\ir include/expansions.sql
WITH bindings AS (  -- RoleBindings and ClusterRoleBindings, without the API server's bootstrap ones
:bindings
)
SELECT DISTINCT b.context_name, b.kind, b.namespace, b.name, b.uid
FROM bindings b
WHERE EXISTS (
    SELECT 1 FROM jsonb_array_elements(COALESCE(b.subjects, '[]')) AS s
    WHERE s->>'name' IN ('system:anonymous', 'system:unauthenticated'));
