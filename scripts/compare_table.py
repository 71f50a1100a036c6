#!/usr/bin/env python3
"""The tables of `scripts/gpu-images.sh compare`: FID-10k of every run with one training budget.

Reads compare.tsv, one line per FID: budget, label, seed, seconds trained, NFE, FID, steps. Prints, as Markdown,
FID after the whole budget at each NFE (mean, and min-max over the seeds), and, where runs kept earlier
checkpoints, FID at the lowest NFE against seconds trained. A seed measured twice counts with its latest line.

    python3 scripts/compare_table.py compare.tsv BUDGET
"""

import collections
import sys


def cell(values):
    if not values:
        return ''
    if len(values) == 1:
        return '%.1f' % values[0]
    return '%.1f (%.1f-%.1f)' % (sum(values) / len(values), min(values), max(values))


def main(path, budget):
    fid = collections.defaultdict(dict)    # (label, seconds, nfe) -> {seed: FID}
    steps = collections.defaultdict(dict)  # (label, seconds) -> {seed: steps}
    for line in open(path):
        fields = line.rstrip('\n').split('\t')
        if len(fields) != 7 or fields[0] != budget:
            continue
        _, label, seed, at, nfe, value, n = fields
        fid[(label, int(at), int(nfe))][seed] = float(value)
        steps[(label, int(at))][seed] = int(n)
    order = ['tvm', 'meanflow', 'imf', 'fm']
    method = lambda label: label.split('+')[0].split('-')[0]  # 'tvm-lr4', 'imf+ic' -> 'tvm', 'imf'
    labels = sorted({k[0] for k in steps}, key=lambda m: (order.index(method(m)) if method(m) in order else 9, m))
    end = int(budget)
    nfes = sorted({k for (_, at, k) in fid if at == end})
    print('FID-10k after %s s of training each (mean, min-max over seeds; flow matching: Euler steps, 2 evaluations each)'
          % budget)
    print('| method | seeds | steps | ' + ' | '.join('%d NFE' % k for k in nfes) + ' |')
    print('| --- | --- | --- | ' + ' | '.join('---' for _ in nfes) + ' |')
    for m in labels:
        n = list(steps[(m, end)].values())
        if not n:
            continue
        span = '%d-%d' % (min(n), max(n)) if len(n) > 1 else '%d' % n[0]
        cells = [cell(list(fid[(m, end, k)].values())) for k in nfes]
        print('| %s | %s | %s | %s |' % (m, ','.join(sorted(steps[(m, end)])), span, ' | '.join(cells)))
    times = sorted({at for (_, at) in steps})
    if len(times) > 1:
        k = min(k for (_, _, k) in fid)
        print()
        print('FID-10k at %d NFE against seconds of training (mean, min-max over seeds)' % k)
        print('| method | ' + ' | '.join('%d s' % t for t in times) + ' |')
        print('| --- | ' + ' | '.join('---' for _ in times) + ' |')
        for m in labels:
            print('| %s | %s |' % (m, ' | '.join(cell(list(fid[(m, t, k)].values())) for t in times)))


if __name__ == '__main__':
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
