-- id: service-account-token-automounted
-- title: Pods that mount a service account token
-- severity: medium
-- frameworks: nsa-cisa
-- section: NSA/CISA v1.2 "Kubernetes Pod security: Protecting Pod service account tokens"
-- remediation: Set automountServiceAccountToken: false on the pod (or its service account) unless it talks to the API.
--
-- Returns one row per offending object: context_name, kind, namespace, name, uid.
\ir include/expansions.sql
WITH pod_specs AS (  -- every pod spec: pods and the pod templates of workloads
:pod_specs
)
SELECT s.context_name, s.kind, s.namespace, s.name, s.uid
FROM pod_specs s
LEFT JOIN k8s_serviceaccounts sa
  ON sa.context_name = s.context_name AND sa.namespace = s.namespace
 AND sa.name = COALESCE(NULLIF(s.pod->>'serviceAccountName', ''), NULLIF(s.pod->>'serviceAccount', ''), 'default')
WHERE COALESCE((s.pod->>'automountServiceAccountToken')::boolean, sa.automount_service_account_token, true);
