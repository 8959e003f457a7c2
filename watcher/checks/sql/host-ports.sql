-- id: host-ports
-- title: Containers binding host ports
-- severity: medium
-- frameworks: pss-baseline, pss-restricted
-- section: PSS Baseline "Host Ports"
-- remediation: Remove ports[].hostPort; expose the container through a Service instead.
--
-- Returns one row per offending object: context_name, kind, namespace, name, uid.
WITH pod_specs AS (  -- every pod spec: pods and the pod templates of workloads
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
)
SELECT s.context_name, s.kind, s.namespace, s.name, s.uid
FROM pod_specs s
WHERE EXISTS (
  SELECT 1 FROM (  -- every init, regular and ephemeral container of the spec
    SELECT 'init' AS container_type, value AS container
    FROM jsonb_array_elements(COALESCE(s.pod->'initContainers', '[]'))
    UNION ALL
    SELECT 'regular', value FROM jsonb_array_elements(COALESCE(s.pod->'containers', '[]'))
    UNION ALL
    SELECT 'ephemeral', value FROM jsonb_array_elements(COALESCE(s.pod->'ephemeralContainers', '[]'))
  ) AS c
  WHERE EXISTS (
      SELECT 1 FROM jsonb_array_elements(COALESCE(container->'ports', '[]')) AS port
      WHERE COALESCE((port->>'hostPort')::int, 0) <> 0)
);
