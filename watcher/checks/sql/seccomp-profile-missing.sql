-- id: seccomp-profile-missing
-- title: Containers without a RuntimeDefault or Localhost seccomp profile
-- severity: low
-- frameworks: pss-restricted
-- section: PSS Restricted "Seccomp"
-- remediation: Set securityContext.seccompProfile.type: RuntimeDefault on the pod.
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
  WHERE container->'securityContext'->'seccompProfile'->>'type' NOT IN ('RuntimeDefault', 'Localhost')
     OR pod->'securityContext'->'seccompProfile'->>'type' NOT IN ('RuntimeDefault', 'Localhost')
     OR COALESCE(container->'securityContext'->'seccompProfile'->>'type',
                 pod->'securityContext'->'seccompProfile'->>'type') IS NULL
);
