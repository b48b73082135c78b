"""Thread churn target: two threads that keep starting batches of short-lived threads.

    python thread_churn.py BATCH SECONDS

Each of the two starters starts BATCH threads, each of which calls down 8 levels and
sleeps SECONDS, joins them and starts the next batch; so the process's thread list
changes on nearly every sampler tick.
"""
import sys
import threading
import time


def deep(n, seconds):
    if n:
        return deep(n - 1, seconds)
    time.sleep(seconds)


def starter(batch, seconds):
    while True:
        threads = [threading.Thread(target=deep, args=(8, seconds)) for _ in range(batch)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def main():
    batch, seconds = int(sys.argv[1]), float(sys.argv[2])
    for _ in range(2):
        threading.Thread(target=starter, args=(batch, seconds), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
