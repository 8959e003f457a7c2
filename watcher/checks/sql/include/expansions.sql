-- The expansions the checks share, each defined once here.
--
-- A check file includes this file (\ir include/expansions.sql) and writes :pod_specs,
-- :containers, :roles or :bindings where the expansion goes: psql sets the variables with \gset
-- below and interpolates them; k8s-watcher (watcher/checks/__init__.py) splices the
-- same text in when it loads a check. docs/checks.md shows how to add a workload kind.
--
-- pod_specs: every pod spec, of pods and of the pod templates of workloads, as
--   (context_name, kind, namespace, name, uid, annotations, pod).
-- containers: every init, regular and ephemeral container of the pod spec s.pod, as
--   (container_type, container).
-- roles: Roles and ClusterRoles, without the API server's own bootstrap ones, as
--   (context_name, kind, namespace, name, uid, rules).
-- bindings: RoleBindings and ClusterRoleBindings, without the bootstrap ones, as
--   (context_name, kind, namespace, name, uid, role_ref, subjects).
SELECT $pod_specs$
  SELECT context_name, 'Pod' AS kind, namespace, name, uid, annotations, spec AS pod FROM k8s_pods
  UNION ALL
  SELECT context_name, 'Deployment', namespace, name, uid,
         spec->'template'->'metadata'->'annotations', spec->'template'->'spec' FROM k8s_deployments
  UNION ALL
  SELECT context_name, 'DaemonSet', namespace, name, uid,
         spec->'template'->'metadata'->'annotations', spec->'template'->'spec' FROM k8s_daemonsets
  UNION ALL
  SELECT context_name, 'StatefulSet', namespace, name, uid,
         spec->'template'->'metadata'->'annotations', spec->'template'->'spec' FROM k8s_statefulsets
  UNION ALL
  SELECT context_name, 'ReplicaSet', namespace, name, uid,
         spec->'template'->'metadata'->'annotations', spec->'template'->'spec' FROM k8s_replicasets
  UNION ALL
  SELECT context_name, 'Job', namespace, name, uid,
         spec->'template'->'metadata'->'annotations', spec->'template'->'spec' FROM k8s_jobs
  UNION ALL
  SELECT context_name, 'CronJob', namespace, name, uid,
         spec->'jobTemplate'->'spec'->'template'->'metadata'->'annotations',
         spec->'jobTemplate'->'spec'->'template'->'spec' FROM k8s_cronjobs
$pod_specs$ AS pod_specs, $containers$
    SELECT 'init' AS container_type, value AS container
    FROM jsonb_array_elements(COALESCE(s.pod->'initContainers', '[]'))
    UNION ALL
    SELECT 'regular', value FROM jsonb_array_elements(COALESCE(s.pod->'containers', '[]'))
    UNION ALL
    SELECT 'ephemeral', value FROM jsonb_array_elements(COALESCE(s.pod->'ephemeralContainers', '[]'))
$containers$ AS containers, $roles$
  SELECT context_name, 'ClusterRole' AS kind, namespace, name, uid, rules FROM k8s_clusterroles
  WHERE COALESCE(labels->>'kubernetes.io/bootstrapping', '') <> 'rbac-defaults'
  UNION ALL
  SELECT context_name, 'Role', namespace, name, uid, rules FROM k8s_roles
  WHERE COALESCE(labels->>'kubernetes.io/bootstrapping', '') <> 'rbac-defaults'
$roles$ AS roles, $bindings$
  SELECT context_name, 'ClusterRoleBinding' AS kind, namespace, name, uid, role_ref, subjects
  FROM k8s_clusterrolebindings
  WHERE COALESCE(labels->>'kubernetes.io/bootstrapping', '') <> 'rbac-defaults'
  UNION ALL
  SELECT context_name, 'RoleBinding', namespace, name, uid, role_ref, subjects FROM k8s_rolebindings
  WHERE COALESCE(labels->>'kubernetes.io/bootstrapping', '') <> 'rbac-defaults'
$bindings$ AS bindings \gset
