"""A real webhook receiver for tests: a threaded HTTP server on loopback that keeps every request it
gets, and answers as the test says (a status, informational answers first, slowly, never, a byte at
a time, a redirect, a huge body). It can go down and come back on the same port."""

import contextlib
import http.server
import threading
import time
from dataclasses import dataclass, field

from tests.servers import free_port


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Behaviour:
    status: int = 200
    delay: float = 0.0  # seconds before answering
    hang: bool = False  # never answer (until the receiver stops)
    drip: float = 0.0  # send the answer's head one byte per this many seconds
    interim: tuple[int, ...] = ()  # informational answers sent first (103 Early Hints, say)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        receiver: Receiver = self.server.receiver
        with receiver.open_request():
            self._answer(receiver)

    def _answer(self, receiver: "Receiver"):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        receiver.record(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        behaviour = receiver.behaviour
        if behaviour.hang:
            receiver.released.wait(120)
            return
        if behaviour.delay:
            receiver.released.wait(behaviour.delay)
        head = [f"HTTP/1.1 {status} X\r\nLink: </hint>; rel=preload\r\n\r\n" for status in behaviour.interim]
        head += [f"HTTP/1.1 {behaviour.status} X\r\n", f"Content-Length: {len(behaviour.body)}\r\n"]
        head += [f"{name}: {value}\r\n" for name, value in behaviour.headers.items()]
        head = "".join([*head, "\r\n"]).encode()
        try:
            if behaviour.drip:
                for byte in head:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    if receiver.released.wait(behaviour.drip):
                        return
            else:
                self.wfile.write(head)
            self.wfile.write(behaviour.body)
        except OSError:
            pass  # the sender gave up

    def log_message(self, *args):
        pass


class Receiver:
    """`url` points at it; `received` lists what came, in order; `behaviour` says how to answer;
    `most_open` is the most requests it was answering at once."""

    def __init__(self, port: int = 0):
        self.behaviour = Behaviour()
        self.received: list[Received] = []
        self.open = self.most_open = 0
        self.lock = threading.Lock()
        self.released = threading.Event()
        self.port = port or free_port()
        self.server = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def record(self, request: Received) -> None:
        with self.lock:
            self.received.append(request)

    @contextlib.contextmanager
    def open_request(self):
        with self.lock:
            self.open += 1
            self.most_open = max(self.most_open, self.open)
        try:
            yield
        finally:
            with self.lock:
                self.open -= 1

    def start(self) -> None:
        """Listen (again) on its port."""
        self.released.clear()
        deadline = time.monotonic() + 10
        while True:
            try:
                self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
                break
            except OSError:  # the old socket lingers a moment
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.server.daemon_threads = True
        self.server.receiver = self
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def stop(self) -> None:
        """Stop listening (connections are refused) and let hanging answers go."""
        self.released.set()
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def ids(self) -> list[str]:
        with self.lock:
            return [request.headers.get("webhook-id", "") for request in self.received]
