-- id: restricted-volume-types
-- title: Pods using volume types outside the restricted set
-- severity: medium
-- frameworks: pss-restricted
-- section: PSS Restricted "Volume Types"
-- remediation: Use only configMap, csi, downwardAPI, emptyDir, ephemeral, persistentVolumeClaim, projected and secret volumes.
--
-- Returns one row per offending object: context_name, kind, namespace, name, uid.
\ir include/expansions.sql
WITH pod_specs AS (  -- every pod spec: pods and the pod templates of workloads
:pod_specs
)
SELECT s.context_name, s.kind, s.namespace, s.name, s.uid
FROM pod_specs s
WHERE EXISTS (
    SELECT 1 FROM jsonb_array_elements(COALESCE(s.pod->'volumes', '[]')) AS v, jsonb_object_keys(v) AS k
    WHERE k NOT IN ('name', 'configMap', 'csi', 'downwardAPI', 'emptyDir', 'ephemeral', 'persistentVolumeClaim',
                    'projected', 'secret'));
