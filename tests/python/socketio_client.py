"""The python-socketio client against switchyard's /socket.io/, run by tests/socketio_python.rs.

Connects over the transport named in argv[2] (`websocket` or `polling`) to the server at
argv[1], sends the seed's `message` three times, calls `sum` and waits for its answer, answers
the server's `question` (after `ask`), and prints what it saw as one JSON line.
"""
import json
import sys
import threading

import socketio

url, transport = sys.argv[1], sys.argv[2]
sio = socketio.Client(reconnection=False)
responses = []
told = threading.Event()
told_data = {}
three = threading.Event()


@sio.on("response")
def on_response(data, *offset):
    responses.append(data)
    if len(responses) == 3:
        three.set()


@sio.on("question")
def on_question(q):
    return f"python says {q}"


@sio.on("told")
def on_told(data, *offset):
    told_data.update(data)
    told.set()


sio.connect(url, transports=[transport], wait_timeout=10)
connected_transport = sio.transport()
for i in range(3):
    sio.emit("message", f"hello {i}")
assert three.wait(10), f"three responses, got {responses}"
total = sio.call("sum", [1, 2, 3], timeout=10)
sio.emit("ask", {"q": "colour?"})
assert told.wait(10), "the server's request was answered and told back"
sio.disconnect()
print(json.dumps({"transport": connected_transport, "responses": responses, "sum": total, "told": told_data}))
