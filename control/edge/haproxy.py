"""Talking to HAProxy: its configuration check, its master CLI (``haproxy -W -S PATH``) for
reloads, and starting a master of our own. IO only; what to render is render.py's."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import NamedTuple

from control.common.errors import BackendUnavailable


class Worker(NamedTuple):
    pid: int
    reloads: int  # how many reloads ago it was started: 0 is the current one


class ProcessList(NamedTuple):
    master_reloads: int
    failed_reloads: int
    workers: tuple[Worker, ...]


def parse_show_proc(text: str) -> ProcessList:
    """The master CLI's ``show proc`` (HAProxy 2.6)."""
    reloads = failed = 0
    workers: list[Worker] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3 or not fields[0].isdigit():
            continue
        if fields[1] == "master":
            reloads = int(fields[2])
            if len(fields) > 4 and fields[3] == "[failed:":
                failed = int(fields[4].rstrip("]"))
        elif fields[1] == "worker":
            workers.append(Worker(int(fields[0]), int(fields[2])))
    return ProcessList(reloads, failed, tuple(workers))


async def check_config(binary: str, path: Path, timeout_s: float = 10.0) -> str | None:
    """None when HAProxy accepts the file (a file with no listener yet included: the
    master starts on it and a reload adds them), else HAProxy's complaint."""
    proc = await asyncio.create_subprocess_exec(
        binary,
        "-c",
        "-f",
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return f"haproxy -c took longer than {timeout_s:g}s"
    text = out.decode(errors="replace").strip()
    if proc.returncode == 0 or (proc.returncode == 2 and "has no error" in text):
        return None
    return text or f"haproxy -c exited {proc.returncode}"


class MasterSocket:
    """HAProxy's master CLI on a UNIX socket: one command per connection."""

    def __init__(self, path: str, timeout_s: float = 5.0) -> None:
        self.path = path
        self.timeout_s = timeout_s

    async def command(self, line: str) -> str:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(self.path), self.timeout_s
            )
        except (TimeoutError, OSError) as exc:
            raise BackendUnavailable(f"HAProxy master socket {self.path}: {exc}") from None
        try:
            writer.write(line.encode() + b"\n")
            writer.write_eof()  # the master answers, then closes
            data = await asyncio.wait_for(reader.read(1 << 20), self.timeout_s)
        except (TimeoutError, OSError) as exc:
            raise BackendUnavailable(f"HAProxy master socket {self.path}: {exc}") from None
        finally:
            writer.close()
        return data.decode(errors="replace")

    async def processes(self) -> ProcessList:
        return parse_show_proc(await self.command("show proc"))

    async def reload(self) -> ProcessList:
        """Ask the master to reload, and wait until it has: new workers take new
        connections, old ones keep theirs (until they close or hard-stop-after)."""
        before = await self.processes()
        await self.command("reload")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        while loop.time() < deadline:
            await asyncio.sleep(0.05)
            try:
                now = await self.processes()
            except BackendUnavailable:
                continue  # the master re-executes itself: its socket comes back
            if now.failed_reloads > before.failed_reloads:
                raise BackendUnavailable("HAProxy refused the new configuration")
            if now.master_reloads > before.master_reloads and any(
                w.reloads == 0 for w in now.workers
            ):
                return now
        raise BackendUnavailable(f"HAProxy did not reload within {self.timeout_s:g}s")


async def start_master(binary: str, config: Path, socket: Path) -> asyncio.subprocess.Process:
    """HAProxy in master-worker mode on ``config``, its master CLI at ``socket``; in the
    foreground of the caller (who stops it: SIGUSR1 lets workers finish, SIGTERM not)."""
    with contextlib.suppress(FileNotFoundError):  # a stale one from a master that died
        os.unlink(socket)
    return await asyncio.create_subprocess_exec(
        binary, "-W", "-S", f"{socket},mode,600", "-f", str(config)
    )
