"""vipo.pipelines"""
