-- id: capabilities-beyond-baseline
-- title: Containers adding capabilities beyond the baseline set
-- severity: high
-- frameworks: pss-baseline, pss-restricted
-- section: PSS Baseline "Capabilities"
-- remediation: Add no capability outside (spelled exactly so) AUDIT_WRITE, CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, MKNOD, NET_BIND_SERVICE, SETFCAP, SETGID, SETPCAP, SETUID, SYS_CHROOT.
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
      SELECT 1 FROM jsonb_array_elements_text(COALESCE(container->'securityContext'->'capabilities'->'add', '[]')) AS cap
      WHERE cap NOT IN (
        'AUDIT_WRITE', 'CHOWN', 'DAC_OVERRIDE', 'FOWNER', 'FSETID', 'KILL', 'MKNOD', 'NET_BIND_SERVICE',
        'SETFCAP', 'SETGID', 'SETPCAP', 'SETUID', 'SYS_CHROOT'))
);
