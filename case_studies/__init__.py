"""Packaged case studies: one subpackage per study; each registers its `CaseStudy` on import
(`dgt_interp.casestudy.register`). `dgt-interp case-study list` shows them."""
