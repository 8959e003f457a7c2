-- k8s_networking_network_policies: the official CloudQuery k8s source v6.2.4's table, over k8s_networkpolicies
SELECT
  _cq_sync_time AS _cq_sync_time,
  _cq_source_name AS _cq_source_name,
  (md5(context_name || '/' || uid::text))::uuid AS _cq_id,
  NULL::uuid AS _cq_parent_id,
  context_name AS context,
  (''::text)::text AS kind,
  (''::text)::text AS api_version,
  (COALESCE(name, ''))::text AS name,
  (COALESCE(namespace, ''))::text AS namespace,
  uid::text AS uid,
  (COALESCE(resource_version, ''))::text AS resource_version,
  (COALESCE(generation, 0))::bigint AS generation,
  deletion_grace_period_seconds AS deletion_grace_period_seconds,
  (COALESCE(labels, '{}'))::jsonb AS labels,
  (COALESCE(annotations, '{}'))::jsonb AS annotations,
  (COALESCE(owner_references, '[]'))::jsonb AS owner_references,
  finalizers AS finalizers,
  (COALESCE(spec->'podSelector', '{}'))::jsonb AS spec_pod_selector,
  (COALESCE(spec->'ingress', '[]'))::jsonb AS spec_ingress,
  (COALESCE(spec->'egress', '[]'))::jsonb AS spec_egress,
  (CASE WHEN jsonb_typeof(spec->'policyTypes') = 'array' THEN ARRAY(SELECT e FROM jsonb_array_elements_text(spec->'policyTypes') WITH ORDINALITY AS a(e, i) ORDER BY i) END)::text[] AS spec_policy_types
FROM k8s_networkpolicies
