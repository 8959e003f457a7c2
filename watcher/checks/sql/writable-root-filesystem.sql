-- id: writable-root-filesystem
-- title: Containers with a writable root filesystem
-- severity: low
-- frameworks: nsa-cisa
-- section: NSA/CISA v1.2 "Kubernetes Pod security: Immutable container file systems"
-- remediation: Set securityContext.readOnlyRootFilesystem: true; mount an emptyDir where the process must write.
--
-- Returns one row per offending object: context_name, kind, namespace, name, uid.
\ir include/expansions.sql
WITH pod_specs AS (  -- every pod spec: pods and the pod templates of workloads
:pod_specs
)
SELECT s.context_name, s.kind, s.namespace, s.name, s.uid
FROM pod_specs s
WHERE EXISTS (
  SELECT 1 FROM (  -- every init, regular and ephemeral container of the spec
:containers
  ) AS c
  WHERE (container->'securityContext'->>'readOnlyRootFilesystem') IS DISTINCT FROM 'true'
);
