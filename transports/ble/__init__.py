"""BLE building blocks for :mod:`transports.bumble`: advertisement layout (:mod:`.adv`), links
(:mod:`.links`), virtual radios (:mod:`.virtual`) and error translation (:mod:`.guard`)."""
