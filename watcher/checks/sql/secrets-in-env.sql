-- id: secrets-in-env
-- title: Containers reading Secrets into environment variables
-- severity: medium
-- frameworks: nsa-cisa
-- section: NSA/CISA v1.2 "Network separation and hardening: Secrets"
-- remediation: Mount the Secret as a volume: environment variables leak into logs, crash dumps and child processes.
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
      SELECT 1 FROM jsonb_array_elements(COALESCE(container->'env', '[]')) AS e
      WHERE e->'valueFrom'->'secretKeyRef' IS NOT NULL)
     OR EXISTS (
      SELECT 1 FROM jsonb_array_elements(COALESCE(container->'envFrom', '[]')) AS e
      WHERE e->'secretRef' IS NOT NULL)
);
