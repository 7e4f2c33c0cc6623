"""One module per `trainlab` command: it reads its options, calls the engine and the record layer, and writes its
outputs. Commands never import each other: what two of them share lives in a layer below."""
