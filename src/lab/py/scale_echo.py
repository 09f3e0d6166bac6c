"""python3 scale_echo.py PORT: echoes what it reads; holds every connection.
"""
import asyncio
import resource
import sys
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(r, w):
    while data := await r.read(4096):
        w.write(data)
        await w.drain()


async def main():
    srv = await asyncio.start_server(serve, "0.0.0.0", int(sys.argv[1]), backlog=4096)
    print("listening", flush=True)
    await srv.serve_forever()
asyncio.run(main())
