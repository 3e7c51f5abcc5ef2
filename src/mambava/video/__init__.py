"""From a raw video to face crops: decoding (:mod:`.decode`), detection, eye alignment and
tracking (:mod:`.faces`), and the ``data crop`` stage (:mod:`.crop`)."""
