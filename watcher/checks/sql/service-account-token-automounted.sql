-- id: service-account-token-automounted
-- title: Pods that mount a service account token
-- severity: medium
-- frameworks: nsa-cisa
-- section: NSA/CISA v1.2 "Kubernetes Pod security: Protecting Pod service account tokens"
-- remediation: Set automountServiceAccountToken: false on the pod (or its service account) unless it talks to the API.
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
LEFT JOIN k8s_serviceaccounts sa
  ON sa.context_name = s.context_name AND sa.namespace = s.namespace
 AND sa.name = COALESCE(NULLIF(s.pod->>'serviceAccountName', ''), NULLIF(s.pod->>'serviceAccount', ''), 'default')
WHERE COALESCE((s.pod->>'automountServiceAccountToken')::boolean, sa.automount_service_account_token, true);
