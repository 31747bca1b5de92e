"""The site runtime (one long-lived process per site) and the torch-free proxy that Flower's
per-message ``flwr-clientapp`` runs instead of the ClientApp: a message over the site's socket and
back, the version refusal, the channel private to the site's user, bounded waits, no PyTorch in
the per-message process. A small ClientApp stands in for the project's (whose import takes 14 s)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict
from flwr.clientapp import ClientApp

from omnirad.protocol import RUNTIME_UNAVAILABLE, WRONG_VERSION
from omnirad_fl.client import clientapp_relay as relay
from omnirad_fl.client.cli import relay_script
from omnirad_fl.client.runtime import SiteRuntime
from omnirad_fl.client.runtime_proxy import RuntimeProxy, forwarding_loader
from omnirad_fl.client.runtime_supervisor import SiteRuntimeProcess, listening, serve_site

VERSION = "0.1.0"
small_app = ClientApp()
calls: list[str] = []


@small_app.query()
def count(msg: Message, context: Context) -> Message:
    """Replies with how often this context has been seen; remembers it in the context's state."""
    calls.append(msg.metadata.message_id)
    seen = int(context.state["seen"]["n"]) + 1 if "seen" in context.state else 1
    context.state["seen"] = ConfigRecord({"n": seen})
    return Message(RecordDict({"reply": ConfigRecord({"seen": seen, "asked": msg.content["ask"]["what"]})}),
                   reply_to=msg)


def query(what: str) -> Message:
    metadata = Metadata(run_id=1, message_id=f"m-{what}", src_node_id=0, dst_node_id=9, reply_to_message_id="",
                        group_id="1", created_at=time.time(), ttl=3600.0, message_type="query")
    return Message(metadata=metadata, content=RecordDict({"ask": ConfigRecord({"what": what})}))


def a_context() -> Context:
    return Context(run_id=1, node_id=9, node_config={"site-id": 0}, state=RecordDict(), run_config={})


def private_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "rt"
    folder.mkdir(mode=0o700)
    return folder


@contextmanager
def serving(folder: Path, **kwargs: object) -> Iterator[SiteRuntime]:
    runtime = SiteRuntime(folder / "runtime.sock", small_app, VERSION, **kwargs)  # type: ignore[arg-type]
    thread = threading.Thread(target=runtime.serve_forever, daemon=True)
    thread.start()
    try:
        yield runtime
    finally:
        runtime.shutdown()
        runtime.server_close()
        thread.join()


def test_messages_go_through_the_runtime_and_back_with_the_context(tmp_path):
    with serving(private_folder(tmp_path)) as runtime:
        proxy, context = RuntimeProxy(runtime.path, VERSION, wait=5), a_context()
        first, second = proxy(message=query("a"), context=context), proxy(message=query("b"), context=context)
    assert not first.has_error() and not second.has_error()
    assert first.content["reply"]["asked"] == "a" and second.content["reply"]["seen"] == 2  # the context came back
    assert second.metadata.reply_to_message_id == "m-b" and int(context.state["seen"]["n"]) == 2
    assert not runtime.path.exists()  # closing the runtime removes its socket


def test_a_bundle_for_another_omnirad_version_is_refused_with_a_code(tmp_path):
    calls.clear()
    with serving(private_folder(tmp_path)) as runtime:
        reply = RuntimeProxy(runtime.path, "0.0.9", wait=5)(message=query("a"), context=a_context())
    assert reply.has_error() and reply.error.code == WRONG_VERSION
    assert "0.0.9" in reply.error.reason and VERSION in reply.error.reason and not calls


def test_the_socket_and_its_folder_are_the_site_users_alone(tmp_path):
    folder = private_folder(tmp_path)
    with serving(folder) as runtime:
        assert stat.S_IMODE(os.stat(runtime.path).st_mode) == 0o600 and stat.S_ISSOCK(os.stat(runtime.path).st_mode)
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    folder.chmod(0o755)  # others could open it: the runtime will not serve there
    with pytest.raises(PermissionError, match="others may open it"):
        SiteRuntime(folder / "runtime.sock", small_app, VERSION)


def test_a_connection_from_another_user_is_refused_and_reaches_no_clientapp(tmp_path):
    calls.clear()
    with serving(private_folder(tmp_path), uid_of=lambda _sock: os.getuid() + 1) as runtime:
        reply = RuntimeProxy(runtime.path, VERSION, wait=5)(message=query("a"), context=a_context())
    assert reply.has_error() and reply.error.code == RUNTIME_UNAVAILABLE and not calls


def test_a_message_with_no_runtime_gets_a_coded_error_after_a_bounded_wait(tmp_path):
    started = time.monotonic()
    reply = RuntimeProxy(private_folder(tmp_path) / "runtime.sock", VERSION, wait=1.0)(
        message=query("a"), context=a_context())
    assert reply.has_error() and reply.error.code == RUNTIME_UNAVAILABLE and "restarting" in reply.error.reason
    assert time.monotonic() - started < 5


def test_a_message_waits_for_a_runtime_that_is_starting_again(tmp_path):
    folder, answered = private_folder(tmp_path), []

    def ask() -> None:
        answered.append(RuntimeProxy(folder / "runtime.sock", VERSION, wait=30)(message=query("a"), context=a_context()))

    asking = threading.Thread(target=ask)
    asking.start()
    time.sleep(1.5)  # the message is waiting: no runtime yet
    with serving(folder):
        asking.join(30)
    assert answered and not answered[0].has_error()


def test_flowers_loader_is_replaced_by_a_proxy_with_the_bundles_version(tmp_path):
    load = forwarding_loader(tmp_path / "runtime.sock")(default_app_ref="", app_path=None, multi_app=True)
    proxy = load("omnirad/omnirad-fl", "0.2.0", "hash")
    assert isinstance(proxy, RuntimeProxy) and proxy.bundle_version == "0.2.0"


def test_the_per_message_clientapp_imports_no_torch():
    code = ("import sys, omnirad_fl.client.verified_app, omnirad_fl.client.runtime_proxy; "
            "print(sorted(m for m in ('torch', 'timm', 'monai', 'opacus') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


def relay_command(program: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The per-message flwr-clientapp as omnirad-client installs it (the relay), run as the SuperExec runs it."""
    if not program.exists():
        program.write_text(relay_script())
        program.chmod(0o755)
    return subprocess.run([str(program), *args], capture_output=True, text=True, timeout=120, env=env)


def test_the_relay_runs_each_message_in_a_child_of_the_warm_parent_and_without_it_runs_itself(tmp_path):
    folder = tmp_path / "private"
    folder.mkdir(mode=0o700)
    path = folder / "clientapp.sock"
    parent = subprocess.Popen([sys.executable, "-m", "omnirad_fl.client.clientapp_zygote", "--socket", str(path)])
    try:
        deadline = time.monotonic() + 120
        while not listening(path):
            assert parent.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        env = {"PATH": os.environ["PATH"], relay.ZYGOTE_ENV: str(path), relay.PYTHON_ENV: sys.executable}
        program = tmp_path / "flwr-clientapp"
        refused = relay_command(program, env)  # verified_app.main in the child, with the relay's environment and streams
        assert refused.returncode == 1 and "neither OMNIRAD_TRUSTED_PUBLISHERS nor" in refused.stderr
        helped = relay_command(program, {**env, "OMNIRAD_SITE_RUNTIME": "x"}, "--help")  # the relay's arguments, its stdout
        assert helped.returncode == 0 and "--token" in helped.stdout
        assert parent.poll() is None  # the parent only forks
        alone = relay_command(program, {**env, relay.ZYGOTE_ENV: str(folder / "gone.sock")})  # no parent: runs itself
        assert alone.returncode == 1 and "neither OMNIRAD_TRUSTED_PUBLISHERS nor" in alone.stderr
    finally:
        parent.terminate()
        parent.wait(30)
    assert not path.exists()


def test_the_relay_imports_the_standard_library_alone():
    code = (f"import runpy, sys; runpy.run_path({relay.__file__!r}); "
            "print(sorted(m.split('.')[0] for m in sys.modules if m.split('.')[0] in ('flwr', 'omnirad', 'numpy', 'torch')))")
    out = subprocess.run([sys.executable, "-IS", "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_omnirad_client_starts_a_dead_runtime_again_and_stops_it_with_the_supernode(tmp_path):
    listener = ("import socket, sys, time; s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(); "
                "time.sleep(60)")
    folder = private_folder(tmp_path)
    runtime = SiteRuntimeProcess(folder / "runtime.sock", cache_mib=64)
    runtime.command = [sys.executable, "-c", listener, str(runtime.socket)]  # stands in for the 14 s import
    started: list[int] = []

    def kill_the_first_runtime() -> None:
        while runtime.process is None or not listening(runtime.socket):
            time.sleep(0.1)
        time.sleep(2)  # the SuperNode has started
        started.append(runtime.process.pid)
        runtime.socket.unlink()
        runtime.process.kill()

    killer = threading.Thread(target=kill_the_first_runtime)
    killer.start()
    status = serve_site([runtime], [sys.executable, "-c", "import time; time.sleep(8)"], dict(os.environ))
    killer.join()
    assert status == 0 and runtime.restarts == 1 and runtime.process is not None
    assert runtime.process.pid != started[0] and runtime.process.poll() is not None  # the second one stopped too
    assert not folder.exists()
