-- id: image-mutable-tag
-- title: Containers running an image by a mutable tag (latest or none)
-- severity: low
-- frameworks: nsa-cisa
-- section: NSA/CISA v1.2 "Kubernetes Pod security: Building secure container images"
-- remediation: Pin images to a version tag, better a digest, so what runs is what was scanned.
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
  WHERE container->>'image' NOT LIKE '%@sha256:%'
    AND (container->>'image' LIKE '%:latest' OR container->>'image' !~ ':[^/]+$')
);
