"""Fail unless every test whose JUnit classname starts with PREFIX ran in at least one report.

    python3 .ci/check-junit.py NAME PREFIX REPORT.xml...

A test that is skipped in every report (or a report with none of these tests
at all) fails the check: CI must not pass without running them.  A test may
skip in one report and run in another (a test for one CLM release skips
under the other release).
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET


def main(name: str, prefix: str, reports: list[str]) -> None:
    ran: dict[str, bool] = {}
    for report in reports:
        cases = [c for c in ET.parse(report).iter("testcase") if c.get("classname", "").startswith(prefix)]
        if not cases:
            sys.exit(f"ci: no {name} tests in {report}")
        for case in cases:
            test = f"{case.get('classname')}::{case.get('name')}"
            ran[test] = ran.get(test, False) or case.find("skipped") is None
    never = sorted(test for test, did in ran.items() if not did)
    if never:
        sys.exit(f"ci: {len(never)} {name} tests never ran (skipped in every report): {never}")
    print(f"ci: all {len(ran)} {name} tests ran ({len(reports)} report(s))")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
