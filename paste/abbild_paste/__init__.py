"""The PasteDeploy pipelines of abbild (``abbild-api-paste.ini``) and every filter
factory they use."""
