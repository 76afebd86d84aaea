"""Packaged case studies: one subpackage per study; each registers its `CaseStudy` on import
(`dgt_interp.studies.register`). `dgt-interp case-study list` shows them."""
