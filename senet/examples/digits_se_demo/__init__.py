"""The digits SE-ResNet demo: a trained tiny SE-ResNet in Caffe format and its held-out images
(see README.md; rebuilt by ``python -m senet.examples.digits_se_demo.train``)."""
