"""DiME-Aug (Scaling Ambiguity, Sec. 2.3): Eq. 1-2 (:mod:`.maths`), ``ser-index`` (:mod:`.index`), the mixer."""
