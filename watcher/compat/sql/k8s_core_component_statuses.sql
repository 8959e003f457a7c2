-- k8s_core_component_statuses: the official CloudQuery k8s source v6.2.4's table (not kept by k8s-watcher: no rows)
SELECT
  NULL::timestamp AS _cq_sync_time,
  NULL::text AS _cq_source_name,
  NULL::uuid AS _cq_id,
  NULL::uuid AS _cq_parent_id,
  NULL::text AS context,
  NULL::text AS kind,
  NULL::text AS api_version,
  NULL::text AS name,
  NULL::text AS namespace,
  NULL::text AS uid,
  NULL::text AS resource_version,
  NULL::bigint AS generation,
  NULL::bigint AS deletion_grace_period_seconds,
  NULL::jsonb AS labels,
  NULL::jsonb AS annotations,
  NULL::jsonb AS owner_references,
  NULL::text[] AS finalizers,
  NULL::jsonb AS conditions
WHERE false
