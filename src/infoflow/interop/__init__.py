"""infoflow inside other evaluation tools: Quantus (`interop.quantus`, optional extra) and Captum
(`interop.captum`)."""
