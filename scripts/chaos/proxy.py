#!/usr/bin/env python3
"""A TCP forwarder the fault harness (scripts/chaos.sh) puts between nodes and a service.

    proxy.py LISTEN_PORT TARGET_PORT STATE_FILE

The state file says what the path does, re-read every 100 ms:
    open                    forward (also when the file is missing)
    cut                     drop every connection and refuse new ones (an outage)
    slow DELAY_MS STALL     delay every chunk by DELAY_MS, and with probability STALL hold it
                            for another second (what a lost segment costs TCP)
Loopback only. This machine's kernel has no netem, so delay and loss are made here.
"""
import asyncio
import random
import sys

LISTEN, TARGET, STATE = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
state = {"mode": "open", "delay": 0.0, "stall": 0.0}
open_writers = set()


def read_state():
    try:
        with open(STATE) as f:
            words = f.read().split()
    except FileNotFoundError:
        words = []
    mode = words[0] if words else "open"
    delay = float(words[1]) / 1000 if mode == "slow" and len(words) > 1 else 0.0
    stall = float(words[2]) if mode == "slow" and len(words) > 2 else 0.0
    return mode, delay, stall


async def watch():
    while True:
        state["mode"], state["delay"], state["stall"] = read_state()
        if state["mode"] == "cut":
            for w in list(open_writers):
                w.transport.abort()
        await asyncio.sleep(0.1)


async def pipe(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data or state["mode"] == "cut":
                break
            if state["delay"]:
                await asyncio.sleep(state["delay"])
            if state["stall"] and random.random() < state["stall"]:
                await asyncio.sleep(1.0)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.transport.abort()


async def handle(client_reader, client_writer):
    if state["mode"] == "cut":
        client_writer.transport.abort()
        return
    try:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", TARGET)
    except OSError:
        client_writer.transport.abort()
        return
    open_writers.update((client_writer, server_writer))
    await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))
    open_writers.discard(client_writer)
    open_writers.discard(server_writer)


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", LISTEN)
    asyncio.ensure_future(watch())
    async with server:
        await server.serve_forever()


asyncio.run(main())
