-- id: default-service-account-bindings
-- title: Bindings granting rights to a default service account
-- severity: low
-- frameworks: nsa-cisa
-- section: NSA/CISA v1.2 "Authentication and authorization: Role-based access control"
-- remediation: Bind a dedicated service account: every pod of the namespace runs as default unless told otherwise.
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
    WHERE s->>'kind' = 'ServiceAccount' AND s->>'name' = 'default');
