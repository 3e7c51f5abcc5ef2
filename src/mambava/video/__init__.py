"""From a raw video to face crops: decoding (:mod:`.decode`), detection, eye alignment and
tracking (:mod:`.faces`, :mod:`.tracking`), the ``data crop`` stage (:mod:`.crop`), and drawing on
video (:mod:`.overlay`)."""
