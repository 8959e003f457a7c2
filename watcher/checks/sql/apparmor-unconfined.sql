-- id: apparmor-unconfined
-- title: Pods or containers with AppArmor turned off
-- severity: medium
-- frameworks: pss-baseline, pss-restricted
-- section: PSS Baseline "AppArmor"
-- remediation: Use appArmorProfile.type RuntimeDefault or Localhost (or the runtime/default annotation), never Unconfined.
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
  WHERE container->'securityContext'->'appArmorProfile'->>'type' NOT IN ('RuntimeDefault', 'Localhost')
     OR pod->'securityContext'->'appArmorProfile'->>'type' NOT IN ('RuntimeDefault', 'Localhost')
     OR EXISTS (
      SELECT 1 FROM jsonb_each_text(COALESCE(annotations, '{}')) AS a
      WHERE a.key LIKE 'container.apparmor.security.beta.kubernetes.io/%'
        AND a.value <> 'runtime/default' AND a.value NOT LIKE 'localhost/%')
);
