"""Count the stacks of stack_churn.py's worker threads that no thread can have.

    python stack_churn_check.py PROFILE.txt     (prof record -t -f raw output)

A consistent worker stack is churn, then tiny/mid/wide frames each one step back in
CYCLE order from its caller. Prints the worker samples, the inconsistent ones, and a few.
"""
import sys

ORDER = {"tiny": 0, "mid": 1, "wide": 2}


def consistent(names):
    if "churn" not in names:
        return False
    calls = names[names.index("churn") + 1:]
    if any(c not in ORDER for c in calls):
        return False
    return all((ORDER[a] - ORDER[b]) % 3 == 1 for a, b in zip(calls, calls[1:]))


def main():
    total = bad = 0
    shown = []
    with open(sys.argv[1]) as f:
        for line in f:
            stack, count = line.rsplit(" ", 1)
            frames = stack.split(";")
            if not frames[0].startswith("w"):
                continue
            total += int(count)
            if not consistent([fr.split(" ")[0] for fr in frames[1:]]):
                bad += int(count)
                shown.append(stack)
    print("%d worker samples, %d inconsistent" % (total, bad))
    for s in shown[:5]:
        print("  " + s[:300])


if __name__ == "__main__":
    main()
