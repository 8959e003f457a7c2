-- id: cluster-admin-bindings
-- title: Bindings to the cluster-admin ClusterRole
-- severity: high
-- frameworks: nsa-cisa
-- section: NSA/CISA v1.2 "Authentication and authorization: Role-based access control"
-- remediation: Bind narrower roles; keep cluster-admin for break-glass accounts.
--
-- Returns one row per offending object: context_name, kind, namespace, name, uid.
WITH bindings AS (  -- RoleBindings and ClusterRoleBindings, without the API server's bootstrap ones
  SELECT context_name, 'ClusterRoleBinding' AS kind, namespace, name, uid, role_ref, subjects, labels
  FROM k8s_clusterrolebindings
  UNION ALL
  SELECT context_name, 'RoleBinding', namespace, name, uid, role_ref, subjects, labels FROM k8s_rolebindings
)
SELECT DISTINCT b.context_name, b.kind, b.namespace, b.name, b.uid
FROM bindings b
WHERE COALESCE(b.labels->>'kubernetes.io/bootstrapping', '') <> 'rbac-defaults'
  AND b.role_ref->>'kind' = 'ClusterRole' AND b.role_ref->>'name' = 'cluster-admin';
