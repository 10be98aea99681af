#!/usr/bin/env python3
"""Evaluates one flag for many targeting keys with the Python flagd OpenFeature provider.

A reference for the fractional-rollout buckets of libs/flags: its tests run this on a flags file
and a list of targeting keys and compare every key's variant with what the Rust provider says.
The provider is openfeature-provider-flagd 0.3.0 (PY_FLAGD_PINS in libs/testkit/bootstrap.py),
the last release with flagd's legacy fractional hash (murmur3_32 of flagKey+targetingKey,
abs(h)/(2**31-1)*100), in file mode: no flagd daemon, no network.

    .tools/bin/flagd-python tests/flags/buckets.py FLAGS_FILE FLAG_KEY KEYS_FILE

KEYS_FILE holds one targeting key per line (blank lines are skipped). Prints one line per key,
in input order:

    <key> TAB <variant> TAB <value> TAB <reason>

(get_string_details(FLAG_KEY, "fallback", EvaluationContext(targeting_key=key))). Exits 1 if
the provider does not become READY, or if any evaluation has an error code or a reason other
than TARGETING_MATCH/SPLIT (those lines are still printed, and summarised on stderr); 2 on bad
usage. The provider logs (logger "openfeature.contrib") go to stderr.
"""
from __future__ import annotations

import logging
import os
import sys

from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import Reason
from openfeature.provider import ProviderStatus

OK_REASONS = (Reason.TARGETING_MATCH, Reason.SPLIT)
FALLBACK = "fallback"


def read_keys(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        keys = [line.rstrip("\r\n") for line in f]
    keys = [k for k in keys if k]
    bad = [k for k in keys if "\t" in k]
    if bad:
        raise ValueError("targeting keys must not contain tabs: %r" % bad[0])
    return keys


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: flagd-python tests/flags/buckets.py FLAGS_FILE FLAG_KEY KEYS_FILE",
              file=sys.stderr)
        return 2
    flags_file, flag_key, keys_file = argv
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="buckets.py: %(name)s %(levelname)s: %(message)s")
    try:
        keys = read_keys(keys_file)
    except (OSError, ValueError) as e:
        print("buckets.py: %s: %s" % (keys_file, e), file=sys.stderr)
        return 2
    if not os.path.isfile(flags_file):
        print("buckets.py: %s: no such file" % flags_file, file=sys.stderr)
        return 2

    # FILE: the in-process resolver reading the flags file (and polling it for changes).
    provider = FlagdProvider(resolver_type=ResolverType.FILE,
                             offline_flag_source_path=os.path.abspath(flags_file))
    try:
        api.set_provider_and_wait(provider)  # runs initialize(): loads the file, or raises
    except Exception as e:  # noqa: BLE001 - any failure to load means no reference
        cause = " (%r)" % e.__cause__ if e.__cause__ is not None else ""
        print("buckets.py: the flagd provider failed to initialise from %s: %r%s"
              % (flags_file, e, cause), file=sys.stderr)
        return 1
    client = api.get_client()
    try:
        status = client.get_provider_status()
        if status != ProviderStatus.READY:
            print("buckets.py: the flagd provider is %s, not READY" % status.value,
                  file=sys.stderr)
            return 1

        out, failed = [], []
        for key in keys:
            d = client.get_string_details(flag_key, FALLBACK,
                                          EvaluationContext(targeting_key=key))
            reason = d.reason.value if isinstance(d.reason, Reason) else str(d.reason)
            out.append("%s\t%s\t%s\t%s\n" % (key, d.variant, d.value, reason))
            if d.error_code is not None or d.reason not in OK_REASONS:
                failed.append((key, reason, d.error_code, d.error_message))
        sys.stdout.write("".join(out))
        sys.stdout.flush()
    finally:
        api.shutdown()

    if failed:
        key, reason, code, msg = failed[0]
        print("buckets.py: %d of %d evaluations of %s failed; first: key %r reason %s "
              "error %s %s" % (len(failed), len(keys), flag_key, key, reason,
                               code.value if code is not None else "-", msg or ""),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
