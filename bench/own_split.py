#!/usr/bin/env python3
"""georouter's own instructions per request, from the two callgrind profiles that
bench/instructions.sh keeps (KEEP=DIR): n and 4n requests, start-up taken out.

Own work is georouter's code, with what it inlines from std, http and bytes, plus
what it calls outside the HTTP stack and the runtime (http's HeaderMap, memcpy,
the allocator, maxminddb). hyper, h2, rustls, tokio and hyper-util are not own
work, also where the compiler inlined them into a georouter function.

Usage: bench/own_split.py DIR/cg.h1.10000 DIR/cg.h1.40000 10000 [TOP]
"""
import collections
import re
import sys

STACK_FILES = ("/hyper-1", "/hyper-util-", "/h2-0", "/rustls-0", "/tokio-1", "/tokio-rustls-", "/tokio-util-")
STACK_FN = re.compile(
    r"^<?(&mut )?(hyper|h2|rustls|tokio|hyper_util|tokio_rustls|tokio_util)::"
    r"|^<[^ ]+ as (hyper|tokio|h2|rustls|hyper_util)::"
)


def own(fn):
    return fn.startswith(("georouter::", "<georouter::")) or " as georouter::" in fn


def stack(fn):
    return STACK_FN.match(fn) is not None


def parse(path):
    """Self cost of own functions (by source file) and inclusive cost of their
    calls outside the stack."""
    names, files = {}, {}
    cur = curfile = fnfile = callee = None
    pending = False
    selfc, calls = collections.Counter(), collections.Counter()

    def name(table, v):
        m = re.match(r"\((\d+)\)(?: (.*))?", v)
        if not m:
            return v
        if m.group(2) is not None:
            table[m.group(1)] = m.group(2)
        return table[m.group(1)]

    for line in open(path):
        line = line.rstrip("\n")
        if line.startswith("fl="):
            fnfile = curfile = name(files, line[3:])
        elif line.startswith(("fi=", "fe=")):
            curfile = name(files, line[3:])
        elif line.startswith("fn="):
            cur, curfile = name(names, line[3:]), fnfile
        elif line.startswith(("cfi=", "cfl=")):
            name(files, line[4:])
        elif line.startswith("cfn="):
            callee = name(names, line[4:])
        elif line.startswith("calls="):
            pending = True
        elif line[:1] in "0123456789+-*":
            fields = line.split()
            cost = int(fields[1]) if len(fields) > 1 else 0
            if pending:
                pending = False
                if cur and own(cur) and not own(callee) and not stack(callee):
                    calls[(cur, callee)] += cost
            elif cur and own(cur) and not any(s in (curfile or "") for s in STACK_FILES):
                selfc[cur] += cost
    return selfc, calls


def main():
    small, large, n = parse(sys.argv[1]), parse(sys.argv[2]), int(sys.argv[3])
    top = int(sys.argv[4]) if len(sys.argv) > 4 else 20
    per = lambda i: {k: (large[i][k] - small[i].get(k, 0)) / (3 * n) for k in large[i]}
    selfc, calls = per(0), per(1)
    print("own instructions per request: %.0f (own code %.0f, its calls outside the stack %.0f)"
          % (sum(selfc.values()) + sum(calls.values()), sum(selfc.values()), sum(calls.values())))
    by_fn = collections.Counter(selfc)
    for (fn, _), v in calls.items():
        by_fn[fn] += v
    print("-- by georouter function (its own code and its calls outside the stack)")
    for fn, v in by_fn.most_common(top):
        print("%7.0f  %s" % (v, fn[:120]))
    print("-- the calls outside the stack")
    for (fn, callee), v in sorted(calls.items(), key=lambda x: -x[1])[:top]:
        print("%7.0f  %s -> %s" % (v, fn[:50], callee[:70]))


if __name__ == "__main__":
    main()
