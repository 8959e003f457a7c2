-- id: selinux-custom-options
-- title: Pods or containers setting a custom SELinux user, role or type
-- severity: medium
-- frameworks: pss-baseline, pss-restricted
-- section: PSS Baseline "SELinux"
-- remediation: Leave seLinuxOptions.user and .role unset and use one of the container_* types.
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
  WHERE EXISTS (
      SELECT 1 FROM (VALUES (container->'securityContext'->'seLinuxOptions'),
                            (pod->'securityContext'->'seLinuxOptions')) AS o (opts)
      WHERE opts->>'user' IS NOT NULL OR opts->>'role' IS NOT NULL
         OR opts->>'type' NOT IN ('', 'container_t', 'container_init_t', 'container_kvm_t', 'container_engine_t'))
);
