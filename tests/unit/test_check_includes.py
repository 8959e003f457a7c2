"""The expansions the checks share: defined once in ``sql/include/expansions.sql``, spliced
into a check when it is loaded, so adding a workload kind is one edit of that file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from watcher.checks import INCLUDE, SQL_DIR, CheckFileError, expansions, load_checks, parse_check

_CRONJOBS = "spec->'jobTemplate'->'spec'->'template'->'spec' FROM k8s_cronjobs\n"
_KIND = """  UNION ALL
  SELECT context_name, 'ReplicationController', namespace, name, uid,
         spec->'template'->'metadata'->'annotations', spec->'template'->'spec' FROM k8s_replicationcontrollers
"""


def test_the_include_defines_the_four_expansions() -> None:
    shared = expansions()
    assert shared.keys() == {"pod_specs", "containers", "roles", "bindings"}
    assert "FROM k8s_cronjobs" in shared["pod_specs"] and "'ephemeralContainers'" in shared["containers"]
    assert shared["roles"].count("rbac-defaults") == shared["bindings"].count("rbac-defaults") == 2


def test_every_rbac_check_reads_roles_and_bindings_through_the_include() -> None:
    rbac = [c for c in load_checks() if c.tables & {"k8s_roles", "k8s_rolebindings"}]
    assert len(rbac) == 8
    for check in rbac:
        text = (SQL_DIR / f"{check.id}.sql").read_text()
        assert "\n:roles\n" in text or "\n:bindings\n" in text, check.id
        assert "rbac-defaults" not in text and "rbac-defaults" in check.sql, check.id


def test_a_loaded_check_holds_the_expansion_and_no_psql_syntax() -> None:
    check = next(c for c in load_checks() if c.id == "privileged-containers")
    assert "\\ir" not in check.sql and "\n:" not in check.sql
    assert expansions()["containers"] in check.sql
    assert {"k8s_pods", "k8s_cronjobs"} <= check.tables


def test_adding_a_workload_kind_is_one_edit_of_the_include(tmp_path: Path) -> None:
    directory = tmp_path / "sql"
    shutil.copytree(SQL_DIR, directory)
    include = directory / INCLUDE
    include.write_text(include.read_text().replace(_CRONJOBS, _CRONJOBS + _KIND.rstrip("\n") + "\n", 1))
    before = {c.id: c for c in load_checks()}
    after = {c.id: c for c in load_checks(directory=directory)}
    widened = {i for i in after if "k8s_replicationcontrollers" in after[i].tables}
    users = {i for i, c in before.items() if "k8s_cronjobs" in c.tables and "k8s_pods" in c.tables}
    assert widened == users and len(widened) >= 30


def test_an_expansion_without_the_include_or_unknown_is_refused() -> None:
    text = (SQL_DIR / "host-pid.sql").read_text()
    with pytest.raises(CheckFileError, match="does not include"):
        parse_check(text.replace(f"\\ir {INCLUDE}\n", ""), "host-pid.sql")
    with pytest.raises(CheckFileError, match="no expansion 'pod_spec'"):
        parse_check(text.replace(":pod_specs\n", ":pod_spec\n"), "host-pid.sql")
