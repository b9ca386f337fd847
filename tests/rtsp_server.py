"""A real RTSP server for the camera tests: GStreamer's RTSP server (Debian's
gir1.2-gst-rtsp-server-1.0, run with Debian's /usr/bin/python3, which has the bindings) serving
a video file at rtsp://127.0.0.1:PORT/live, in real time, to each client from its start.

    /usr/bin/python3 tests/rtsp_server.py CLIP.mp4 PORT
    /usr/bin/python3 tests/rtsp_server.py --check      # exit 0 when every element is installed

Prints "ready" once it listens; runs until killed.
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

Gst.init(None)
# The elements the launch line needs (avdec_mpeg4: gstreamer1.0-libav, for OpenCV's mp4v clips).
NEEDED = ("filesrc", "qtdemux", "decodebin", "avdec_mpeg4", "videoconvert", "identity", "x264enc", "rtph264pay")
missing = [name for name in NEEDED if Gst.ElementFactory.find(name) is None]
if sys.argv[1:] == ["--check"]:  # exit 0 when everything is installed
    sys.exit(f"missing GStreamer elements: {', '.join(missing)}" if missing else 0)
clip, port = sys.argv[1], sys.argv[2]
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory()
# identity sync=true paces the file at its frame rate, as a camera would send it.
location = clip.replace("\\", "\\\\").replace('"', '\\"')
factory.set_launch(
    f'( filesrc location="{location}" ! qtdemux ! decodebin ! videoconvert ! identity sync=true '
    "! x264enc tune=zerolatency speed-preset=ultrafast key-int-max=25 ! rtph264pay name=pay0 pt=96 )"
)
server.get_mount_points().add_factory("/live", factory)
if server.attach(None) == 0:
    sys.exit(f"cannot listen on 127.0.0.1:{port}")
print("ready", flush=True)
GLib.MainLoop().run()
