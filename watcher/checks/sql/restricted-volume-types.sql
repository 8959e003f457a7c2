-- id: restricted-volume-types
-- title: Pods using volume types outside the restricted set
-- severity: medium
-- frameworks: pss-restricted
-- section: PSS Restricted "Volume Types"
-- remediation: Use only configMap, csi, downwardAPI, emptyDir, ephemeral, persistentVolumeClaim, projected and secret volumes.
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
    SELECT 1 FROM jsonb_array_elements(COALESCE(s.pod->'volumes', '[]')) AS v, jsonb_object_keys(v) AS k
    WHERE k NOT IN ('name', 'configMap', 'csi', 'downwardAPI', 'emptyDir', 'ephemeral', 'persistentVolumeClaim',
                    'projected', 'secret'));
