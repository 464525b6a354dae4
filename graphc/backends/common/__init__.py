"""What more than one backend uses: the scalar lowering both kernel writers share, the source builder, the disk cache."""
