"""N threads each sending a request to a local server and blocking in recv for its
answer, for SECONDS; the server (a child process, not diagnosed) answers after DELAY.
The main thread joins the clients.

usage: diag_recv.py TRUTH N SECONDS
"""
import time

T0 = time.perf_counter()  # before the other imports, which the truth counts as python

import socket
import subprocess
import sys
import threading

import diag_truth

DELAY = 0.05


def serve():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    print(srv.getsockname()[1], flush=True)

    def answer(conn):
        while conn.recv(1):
            time.sleep(DELAY)
            conn.sendall(b"y")

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=answer, args=(conn,), daemon=True).start()


def client(port, seconds):
    c = diag_truth.clock()
    s = socket.create_connection(("127.0.0.1", port))
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        s.sendall(b"x")
        t0 = time.perf_counter()
        s.recv(1)
        c.add("io", time.perf_counter() - t0)
    s.close()
    c.stop()


def main():
    if sys.argv[1] == "serve":
        serve()
        return
    truth, n, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    main_clock = diag_truth.clock(start=T0)
    server = subprocess.Popen([sys.executable, __file__, "serve"], stdout=subprocess.PIPE)
    t0 = time.perf_counter()
    port = int(server.stdout.readline())  # waits on a pipe while the server starts
    main_clock.add("io", time.perf_counter() - t0)
    threads = [threading.Thread(target=client, args=(port, seconds), name=f"client-{i}") for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    main_clock.add("lock", time.perf_counter() - t0)
    server.kill()
    server.wait()
    diag_truth.write(truth, port=port)


main()
