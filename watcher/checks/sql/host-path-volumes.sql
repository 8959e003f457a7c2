-- id: host-path-volumes
-- title: Pods mounting hostPath volumes
-- severity: high
-- frameworks: nsa-cisa, pss-baseline, pss-restricted
-- section: NSA/CISA v1.2 "Kubernetes Pod security: Pod security enforcement"; PSS Baseline "HostPath Volumes"
-- remediation: Replace hostPath volumes with emptyDir, configMap or persistent volumes.
--
-- Returns one row per offending object: context_name, kind, namespace, name, uid.
\ir include/expansions.sql
WITH pod_specs AS (  -- every pod spec: pods and the pod templates of workloads
:pod_specs
)
SELECT s.context_name, s.kind, s.namespace, s.name, s.uid
FROM pod_specs s
WHERE EXISTS (SELECT 1 FROM jsonb_array_elements(COALESCE(s.pod->'volumes', '[]')) AS v WHERE v ? 'hostPath');
