"""The ``facesdk`` command: one module per verb group, on top of every other package."""
